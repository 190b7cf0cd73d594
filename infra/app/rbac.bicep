// Every role the detector's managed identity gets, each on the narrowest scope Azure allows, each named
// guid(scope id, principal id, role id) so a redeploy updates instead of duplicating. The built-in role
// definition ids are the same in every tenant; each is named and explained once, here. Assignments on the
// existing Log Analytics workspace (another resource group, maybe another subscription) are made by
// rbac-workspace.bicep, which receives these ids from this file.
// docs/deploy.md lists the same roles for operators.

@description('Principal (object) id of the detector\'s user-assigned managed identity.')
param principalId string

@description('Storage account holding host storage, the deployment container and the state table.')
param storageAccountName string

@description('The detector\'s state table in that account (DETECTOR_STATE_TABLE_NAME).')
param stateTableName string

@description('Application Insights component the app sends telemetry to.')
param applicationInsightsName string

@description('Subscription id of the existing Log Analytics workspace.')
param workspaceSubscriptionId string

@description('Resource group of the existing Log Analytics workspace.')
param workspaceResourceGroupName string

@description('Name of the existing Log Analytics workspace.')
param workspaceName string

@description('Table the Log Analytics source reads (DETECTOR_LOGS_TABLE).')
param logsTableName string

@description('Limit the data-read role to logsTableName with an ABAC condition (Log Analytics granular RBAC).')
param restrictLogReadToTable bool = true

@description('The sentinel sink is on: grant the custom incident-writer role on the workspace.')
param enableSentinelSink bool = false

@description('The loganalytics-table sink is on: grant Monitoring Metrics Publisher on its data collection rule.')
param enableLogAnalyticsTableSink bool = false

@description('Name of the findings data collection rule (in the workspace\'s resource group); empty when that sink is off.')
param findingsDataCollectionRuleName string = ''

@description('The webhook sink is on: grant Key Vault Secrets User on the webhook secret.')
param enableWebhookSink bool = false

@description('Key Vault holding the webhook secret; empty when that sink is off.')
param keyVaultName string = ''

@description('Name of the webhook secret; empty when that sink is off.')
param webhookSecretName string = ''

// Storage Blob Data Owner: the Functions host keeps its singleton lease, timer schedule status and keys in
// blob containers it creates itself (azure-webjobs-hosts, azure-webjobs-secrets), and the Flex plan reads
// the package from the deployment container. Microsoft documents Owner (not Contributor) for identity-based
// AzureWebJobsStorage. Scoped to the account because the host creates containers at runtime.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

// Custom role "state table entities": only the entity data actions the state store uses (get, query,
// insert, merge/upsert, delete of outbox entries). Storage Table Data Contributor would add tables/write
// and tables/delete, with which a compromised function could delete its own state (checkpoint and
// outbox). Assigned on the one state table; the table is created here, so the code never creates tables.
var stateTableEntitiesRoleId = guid(resourceGroup().id, 'detector-state-table-entities')

// Monitoring Metrics Publisher: send telemetry to an Application Insights component with local auth off,
// and post to a data collection rule through the Logs Ingestion API. Nothing else.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

// Log Analytics Data Reader: workspaces/read, workspaces/query/read and the data action
// workspaces/tables/data/read, which is all the query API needs to read W3CIISLog. It is narrower than
// Log Analytics Reader (73c42c96-874c-492b-b04d-ab87d138a893), which adds */read over every resource type
// and search actions. With restrictLogReadToTable the data action is further limited to one table.
var logAnalyticsDataReaderRoleId = '3b03c2da-16b3-4a49-8834-0f8130efdd3b'

// Key Vault Secrets User: read secret contents, assigned on the one secret so no other secret is readable.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource tableService 'tableServices' existing = {
    name: 'default'

    resource stateTable 'tables' existing = {
      name: stateTableName
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = if (enableWebhookSink) {
  name: keyVaultName
}

resource webhookSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = if (enableWebhookSink) {
  parent: keyVault
  name: webhookSecretName
}

resource stateTableEntitiesRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: stateTableEntitiesRoleId
  properties: {
    roleName: 'IIS detector state table entities (${resourceGroup().name})'
    description: 'Read, insert, merge and delete entities of the detector state table; no table create or delete.'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.Storage/storageAccounts/tableServices/tables/entities/read'
          'Microsoft.Storage/storageAccounts/tableServices/tables/entities/add/action'
          'Microsoft.Storage/storageAccounts/tableServices/tables/entities/update/action'
          'Microsoft.Storage/storageAccounts/tableServices/tables/entities/delete'
        ]
        notDataActions: []
      }
    ]
    // A custom role's assignable scope is a resource group at the narrowest; it is assigned on the table.
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource hostStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageBlobDataOwnerRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage (AzureWebJobsStorage) and the Flex deployment container'
  }
}

resource stateTableEntityWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::tableService::stateTable.id, principalId, stateTableEntitiesRoleId)
  scope: storageAccount::tableService::stateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', stateTableEntitiesRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Detector state: checkpoint and outbox entities'
  }
  dependsOn: [
    stateTableEntitiesRole
  ]
}

resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Entra-authenticated telemetry (Application Insights local auth is off)'
  }
}

resource webhookSecretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableWebhookSink) {
  name: guid(webhookSecret.id, principalId, keyVaultSecretsUserRoleId)
  scope: webhookSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Resolve the DETECTOR_WEBHOOK_URL Key Vault reference'
  }
}

module workspaceRoles 'rbac-workspace.bicep' = {
  name: 'detector-workspace-rbac'
  scope: resourceGroup(workspaceSubscriptionId, workspaceResourceGroupName)
  params: {
    principalId: principalId
    workspaceName: workspaceName
    logsTableName: logsTableName
    restrictLogReadToTable: restrictLogReadToTable
    logAnalyticsDataReaderRoleId: logAnalyticsDataReaderRoleId
    enableSentinelSink: enableSentinelSink
    enableLogAnalyticsTableSink: enableLogAnalyticsTableSink
    findingsDataCollectionRuleName: findingsDataCollectionRuleName
    monitoringMetricsPublisherRoleId: monitoringMetricsPublisherRoleId
  }
}
