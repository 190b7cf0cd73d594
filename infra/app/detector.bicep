// The detector: a Linux Function App on the Flex Consumption plan (FC1), Python 3.11, running as the
// user-assigned managed identity. Host storage, the deployment package, Application Insights and Key Vault
// references all authenticate with that identity; no key or storage connection string is stored anywhere.

@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Region of the plan and the app (must offer Flex Consumption).')
param location string

@description('Tags for the plan and the app.')
param tags object = {}

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of that identity (AzureWebJobsStorage__clientId, AZURE_CLIENT_ID, Application Insights).')
param identityClientId string

@description('Name of the storage account used for AzureWebJobsStorage and the deployment container.')
param storageAccountName string

@description('Blob container the Flex plan deploys the package from.')
param deploymentContainerName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('The detector\'s own app settings (DETECTOR_*, AZURE_CLIENT_ID) as [{name, value}], built in main.bicep.')
param detectorAppSettings array

@description('Memory of one instance in MB (Flex sizes: 512, 2048 or 4096).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound on instances. A timer trigger runs as a singleton, so this only caps cost.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Subnet for VNet integration (network.bicep, delegated to Microsoft.App/environments); empty: no VNet.')
param virtualNetworkSubnetId string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Settings of the Functions host itself (not read by detector/). FUNCTIONS_WORKER_RUNTIME and
// FUNCTIONS_EXTENSION_VERSION are not set: Flex takes the runtime from functionAppConfig.runtime and
// rejects those two settings.
var hostAppSettings = [
  // Identity-based host storage. A timer trigger needs blob only (singleton lease and schedule status in
  // azure-webjobs-hosts, keys in azure-webjobs-secrets), so no queue or table service URI is given.
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
  { name: 'AzureWebJobsStorage__blobServiceUri', value: storage.properties.primaryEndpoints.blob }
  // The connection string names the component (ingestion endpoint and instrumentation key); it is not a
  // credential here: with DisableLocalAuth the service accepts only the Entra token requested as below.
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: applicationInsights.properties.ConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'detector'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false // the app has no HTTP trigger: only the timer calls it
    keyVaultReferenceIdentity: identityId // resolve @Microsoft.KeyVault(...) settings as the UAMI
    // With a VNet all outbound traffic (storage, Key Vault references, Azure APIs) leaves through it.
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // A timer-only app serves no HTTP: the main site denies every request, in both network modes. The
      // scm site keeps its own (open) rules, because azd deploys the package through it; it still needs
      // an Entra token with rights on the app.
      ipSecurityRestrictionsDefaultAction: 'Deny'
      ipSecurityRestrictions: []
      scmIpSecurityRestrictionsUseMain: false
      scmIpSecurityRestrictionsDefaultAction: 'Allow'
      // In siteConfig rather than a sites/config 'appsettings' child, which checkov mistakes for the web
      // config and checks for HTTP logging, authentication and other settings of a web site.
      appSettings: concat(detectorAppSettings, hostAppSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Children with `parent:` rather than nested: pycep-parser (and so checkov) keeps only the last nested child.
// No publishing passwords: azd and `az functionapp deployment` deploy to Flex with an Entra token.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
