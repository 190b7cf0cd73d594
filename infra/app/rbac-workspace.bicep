// Role assignments on the EXISTING Log Analytics workspace and on resources in its resource group,
// deployed by rbac.bicep into that resource group (role assignments must be deployed where their scope
// lives). Role definition ids come from rbac.bicep, where each is named and justified.

@description('Principal (object) id of the detector\'s user-assigned managed identity.')
param principalId string

@description('Name of the existing Log Analytics workspace holding W3CIISLog.')
param workspaceName string

@description('Table the Log Analytics source reads (DETECTOR_LOGS_TABLE).')
param logsTableName string

@description('Limit the data-read role to logsTableName with an ABAC condition.')
param restrictLogReadToTable bool

@description('Role definition id (GUID) of Log Analytics Data Reader.')
param logAnalyticsDataReaderRoleId string

@description('The sentinel sink is on.')
param enableSentinelSink bool

@description('The loganalytics-table sink is on.')
param enableLogAnalyticsTableSink bool

@description('Name of the findings data collection rule in this resource group; empty when that sink is off.')
param findingsDataCollectionRuleName string

@description('Role definition id (GUID) of Monitoring Metrics Publisher.')
param monitoringMetricsPublisherRoleId string

// Log Analytics granular RBAC: the data action is allowed only on the one table the source queries, so the
// identity cannot read SecurityEvent, SigninLogs or any other table of a shared Sentinel workspace.
var logReadTableCondition = '((!(ActionMatches{\'Microsoft.OperationalInsights/workspaces/tables/data/read\'})) OR (@Resource[Microsoft.OperationalInsights/workspaces/tables:name] StringEquals \'${logsTableName}\'))'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

// Custom role "incident writer": exactly the three operations the sentinel sink calls (GET and PUT of an
// incident, PUT of a comment). Microsoft Sentinel Responder would add workspaces/*/read, query/*/read
// (every table, undoing the table condition below), automationRules/* (rules that close every incident)
// and playbook runs. Incidents are resources under the workspace, so the workspace scope covers them; no
// assignment on the SecurityInsights solution is needed.
var sentinelIncidentWriterRoleId = guid(resourceGroup().id, 'detector-sentinel-incident-writer')

resource sentinelIncidentWriterRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (enableSentinelSink) {
  name: sentinelIncidentWriterRoleId
  properties: {
    roleName: 'IIS detector incident writer (${resourceGroup().name})'
    description: 'Read and write Microsoft Sentinel incidents and write incident comments; nothing else.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.SecurityInsights/incidents/read'
          'Microsoft.SecurityInsights/incidents/write'
          'Microsoft.SecurityInsights/incidents/comments/write'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    // A custom role's assignable scope is a resource group at the narrowest; it is assigned on the workspace.
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource findingsDataCollectionRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' existing = if (enableLogAnalyticsTableSink) {
  name: findingsDataCollectionRuleName
}

resource workspaceLogReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, logAnalyticsDataReaderRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', logAnalyticsDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Log Analytics source: query ${logsTableName}'
    condition: restrictLogReadToTable ? logReadTableCondition : null
    conditionVersion: restrictLogReadToTable ? '2.0' : null
  }
}

resource workspaceIncidentWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableSentinelSink) {
  name: guid(workspace.id, principalId, sentinelIncidentWriterRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', sentinelIncidentWriterRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'sentinel sink: read and write incidents, write incident comments'
  }
  dependsOn: [
    sentinelIncidentWriterRole
  ]
}

resource findingsIngestionPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableLogAnalyticsTableSink) {
  name: guid(findingsDataCollectionRule.id, principalId, monitoringMetricsPublisherRoleId)
  scope: findingsDataCollectionRule
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'loganalytics-table sink: Logs Ingestion API on the findings data collection rule'
  }
}
